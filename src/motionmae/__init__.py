"""MotionMAE: motion-aware masked autoencoders for self-supervised video representation learning."""

from motionmae.version import __version__  # noqa: F401


def __getattr__(name):
    # Lazy so that `import motionmae` stays cheap (the CLI imports torch only for commands that need it).
    if name == "load_encoder":
        from motionmae.eval.features import load_encoder

        return load_encoder
    if name == "featurize":
        from motionmae.eval.features import featurize

        return featurize
    if name == "MotionMAE":
        from motionmae.interop.pretrained import MotionMAE

        return MotionMAE
    raise AttributeError(name)


__all__ = ["MotionMAE", "featurize", "load_encoder", "__version__"]
