"""A refusal is a value with a code and a reason; adapters raise it without re-parsing a string."""

from writ_common.commands import CommandError
from writ_common.errors import CodedError, Refusal


def test_a_refusal_raised_as_a_command_error_keeps_its_code_and_reason() -> None:
    refusal = Refusal(code="unknown_tool", reason="no tool 'x': did you mean 'y'? (a: b)")
    error = CommandError.of(refusal)
    assert isinstance(error, CommandError)
    assert (error.code, error.message) == ("unknown_tool", "no tool 'x': did you mean 'y'? (a: b)")
    assert str(refusal) == str(error) == "unknown_tool: no tool 'x': did you mean 'y'? (a: b)"


def test_refusals_compare_by_value() -> None:
    assert Refusal(code="a", reason="b") == Refusal(code="a", reason="b")
    assert isinstance(CodedError.of(Refusal(code="a", reason="b")), CodedError)
