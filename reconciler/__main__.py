import gc

# Start-up (the imports, the command's module) allocates tens of thousands of objects that live
# to the end: the cyclic collector would only rescan them. ``cli`` turns it back on before the
# command runs (docs/performance.md, session 9).
gc.disable()

from reconciler.cli import main  # noqa: E402

main()
