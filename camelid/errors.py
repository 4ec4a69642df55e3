class CamelidError(Exception):
    """An error the user can fix (bad file, bad config, bad flag). The CLI prints it without a traceback."""
