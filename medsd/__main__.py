"""``python -m medsd`` (what ``accelerate launch -m medsd`` and ``torchrun -m medsd`` run): the ``medsd`` command."""

from medsd.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
