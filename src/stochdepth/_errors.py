"""The errors and warnings of the sampler registry."""

from __future__ import annotations


class UnknownSamplerError(LookupError):
    """A sampler name is neither built in, registered, nor provided by a plugin.

    The message lists the names that are available.
    """


class SamplerPluginError(RuntimeError):
    """A sampler plugin asked for by name failed to load or is not a sampler.

    The message names the plugin's entry point and its distribution.
    """


class SamplerPluginWarning(UserWarning):
    """A sampler plugin was left out of the listing: it is broken or shadowed.

    Listing the samplers never fails because of a plugin; it warns with this
    category, naming the entry point, and goes on.
    """
