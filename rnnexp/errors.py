"""User-facing errors.

Anything the user can fix (a bad params file, a corrupt data file, a missing
checkpoint) raises :class:`RnnexpError` with a message that names what is wrong
and where. The CLI prints the message and exits with status 2, without a
traceback.
"""


class RnnexpError(Exception):
    """An error caused by the user's input, with a message meant for a person."""


class ConfigError(RnnexpError):
    """params.yaml (or an override) is malformed or has an unknown key, wrong type or bad value."""


class DataError(RnnexpError):
    """A data file or folder is missing, unreadable or inconsistent."""


class InputChangedError(RnnexpError):
    """An input (the params file) changed while the stage ran: its outputs would not be
    the ones DVC records for the new version, so they are not written."""
