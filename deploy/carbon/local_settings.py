"""graphite-web's settings in a container of deploy/carbon/Dockerfile.

GRAPHITE_WHISPER_DIRS: the Whisper folders to read, separated by ":" (docker-compose.yml mounts
each carbon-cache's volume read-only and names them all, so one graphite-web shows the whole
ring). GRAPHITE_SECRET_KEY: Django's secret (a random one per start when unset).
"""

import os
import secrets

SECRET_KEY = os.environ.get("GRAPHITE_SECRET_KEY") or secrets.token_hex(32)
ALLOWED_HOSTS = ["*"]
STORAGE_DIR = "/var/lib/graphite"
LOG_DIR = "/var/lib/graphite/log"
INDEX_FILE = "/var/lib/graphite/index"
STANDARD_DIRS = [
    d for d in os.environ.get("GRAPHITE_WHISPER_DIRS", "/var/lib/graphite/whisper").split(":") if d
]
CARBONLINK_HOSTS: list[str] = []
DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "/var/lib/graphite/graphite.db"}
}
