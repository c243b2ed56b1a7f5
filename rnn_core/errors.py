"""Refusals in the library's words, flags added by the commands.

A library error is one line in a Python caller's words. When one setting is at fault,
`setting` names its parameter and the message starts with that name ("revision only applies
to Hub repo ids…"); a command line shows the same line with its own flag there
(`for_command_line`: "--revision only applies…"), the app with its own field's name.
"""
from __future__ import annotations

from collections.abc import Mapping


class SettingError(ValueError):
    """A refused value; `setting` is the parameter at fault (None: no single one)."""

    def __init__(self, message: str, setting: str | None = None):
        super().__init__(message)
        self.setting = setting


def for_command_line(e: BaseException, flags: Mapping[str, str]) -> str:
    """`e`'s message for a command line whose flag for each setting is `flags[setting]`: a
    message that starts with the setting at fault starts with its flag instead."""
    message, setting = str(e), getattr(e, "setting", None)
    if setting in flags and message.startswith(setting + " "):
        return flags[setting] + message[len(setting):]
    return message
