"""MotionMAE: motion-aware masked autoencoders for self-supervised video representation learning."""

from motionmae.version import __version__  # noqa: F401


def __getattr__(name):
    # Lazy so that `import motionmae` stays cheap (the CLI imports torch only for commands that need it).
    if name == "load_encoder":
        from motionmae.eval.features import load_encoder

        return load_encoder
    raise AttributeError(name)
