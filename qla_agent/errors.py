"""The one exception hierarchy of qla-agent; every message names the offending value."""


class QlaError(Exception):
    """Base class of every error qla-agent raises on purpose."""


class CheckpointError(QlaError):
    """A model folder is missing a file or tensor, or holds something we cannot load."""


class ContextOverflowError(QlaError):
    """A request does not fit the session's context under its memory policy."""


class SessionNotFoundError(QlaError):
    """No session with the given id exists."""


class SessionError(QlaError):
    """A session cannot be used as asked (wrong model, corrupt file, busy)."""


class SessionBusyError(SessionError):
    """A session is in use by another request; retry once it finishes, or cancel that request."""


class EngineNotRunningError(QlaError):
    """The engine's scheduler is not running (never started, or stopped); nothing can be served."""


class TokenizerError(QlaError):
    """A tokenizer folder is missing files or holds tokens we cannot use."""


class ChatTemplateError(QlaError):
    """A chat template is missing, does not compile, or refuses the messages (its raise_exception)."""


class RequestError(QlaError):
    """A request's parameters are out of range or contradict each other."""


class ToolError(QlaError):
    """A tool refused its arguments or failed; the message goes back to the model as the tool result."""


class WorkspaceError(ToolError):
    """A path would leave the tool workspace (absolute, `..`, symlink) or break its size limits."""


class AgentError(QlaError):
    """The agent loop cannot go on: no server, a refused request, a broken stream, or the step limit."""
