"""The one exception the text front end raises for bad input or a missing optional dependency."""


class TextError(ValueError):
    """A user-facing text front-end failure, with a short message that says what to fix."""


class NothingToSpeak(TextError):
    """A text (or a piece of a long one) with no letter, digit or CJK character left after cleaning: its
    prompt would hold no phones, and the model would babble up to its frame budget."""

    def __init__(self):
        super().__init__("the text has nothing to speak after cleaning (only symbols or unsupported characters?)")
