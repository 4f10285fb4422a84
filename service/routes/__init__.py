"""The HTTP API v1, one ``APIRouter`` per route group (``create_app`` includes them)."""
