# retrace's start-up hook. `retrace record|replay` puts this directory first on
# PYTHONPATH and describes the session in __RETRACE_BOOT; Python imports this file
# during start-up, before the program runs. retrace/_bootstrap.py starts the session and
# removes every sign of the injection; this file only finds it.


def _retrace_start():
    import os
    import sys

    boot_dir = os.path.dirname(os.path.abspath(__file__))
    config = os.environ.pop("__RETRACE_BOOT", None)
    package_parent = os.path.dirname(os.path.dirname(boot_dir))
    sys.path.insert(0, package_parent)
    try:
        from retrace import _bootstrap
    finally:
        sys.path.remove(package_parent)
    _bootstrap.boot(config, boot_dir)


_retrace_start()
del _retrace_start
