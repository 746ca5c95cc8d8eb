"""The FastAPI server: OpenAI-compatible chat routes, the sessions API, metrics and errors.

Build it with `qla_agent.server.app.create_app(settings, engine)`; importing this package starts nothing.
"""
