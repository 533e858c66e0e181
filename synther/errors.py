"""Errors a user can cause. Scripts print them as one line and exit with code 2."""


class UserError(Exception):
    """Bad input from the user (file, field, option). The message alone must say what to fix."""


class DatasetError(UserError):
    """A dataset file or spec that cannot be used: names the file/field and what was expected."""
