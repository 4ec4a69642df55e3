class CamelidError(Exception):
    """An error the user can fix (bad file, bad config, bad flag). The CLI prints it without a traceback."""


class DiskFull(CamelidError):
    """A write failed because the disk (or quota) is full; nothing half-written is trusted afterwards."""
