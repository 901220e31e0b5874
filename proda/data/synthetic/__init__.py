"""The embedded synthetic domain-shift benchmark (``proda synth``); the generator is being split into modules."""
from .scene import *  # noqa: F401,F403
from .scene import __all__, _CHUNK, EGO, STATIC  # noqa: F401
