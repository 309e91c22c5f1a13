"""actexp's version, written once: pyproject.toml reads it from here, and it needs no installed
package's metadata (a Modal container runs the source as it is copied, never installed)."""

__version__ = "0.1.0"
