"""UserInputError: the message a command prints is one line of printable text, whatever the user typed."""

from drorae_io import UserInputError


def test_the_message_is_one_line_with_control_characters_escaped():
    err = UserInputError("spec.yaml: a\nkey\r\n  with\ttabs \x1b[2J\x00\x7f\u202e: unknown key")
    assert str(err) == "spec.yaml: a key with tabs \\x1b[2J\\x00\\x7f\\u202e: unknown key"
    assert str(UserInputError("width 128 ('é', 3e-4)")) == "width 128 ('é', 3e-4)"  # printable text as it is
