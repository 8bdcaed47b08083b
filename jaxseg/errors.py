"""The one exception type for user mistakes."""


class UserError(Exception):
    """A mistake the user can fix: a bad path, config key, checkpoint or image.

    The message names the thing at fault. The CLI prints it on one line and exits with code 2.
    """
