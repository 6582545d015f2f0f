"""The technician's page on the gateway (docs/localweb.md).

Imported by the runtime only when `[localweb] enabled`: a gateway without it loads no HTTP code.
Standard library only (http.server): a handful of pages for one technician at a time need no
ASGI stack, and the Pi keeps its ~10 MB for the cameras.
"""
