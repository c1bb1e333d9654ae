"""Save and load compressed models (placeholder until the io module lands)."""


def save(*args, **kwargs):
    raise NotImplementedError("torchslim.save is being written")


def load(*args, **kwargs):
    raise NotImplementedError("torchslim.load is being written")
