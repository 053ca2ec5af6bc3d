"""Errors that travel to people: each carries the HTTP status to answer with."""


class RequestError(Exception):
    """A request Atrium refuses; ``status`` is the HTTP code, the message is for people."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
