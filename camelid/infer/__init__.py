"""Inference: the sampling engine (`generate`, `stream`, `Engine`), chat sessions and the HTTP server."""

from camelid.infer.engine import Engine, Request, SamplingParams, generate, stream

__all__ = ["Engine", "Request", "SamplingParams", "generate", "stream"]
