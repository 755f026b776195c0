"""The one exception the text front end raises for bad input or a missing optional dependency."""


class TextError(ValueError):
    """A user-facing text front-end failure, with a short message that says what to fix."""
