"""retrace: record a Python program's execution and replay it deterministically.

The recorder is started by `npx retrace record -- python app.py` (or the start-up hook);
this package holds its Python side. See ARCHITECTURE.md in the project for the design.
"""

__all__ = []
