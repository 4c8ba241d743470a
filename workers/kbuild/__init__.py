"""Kernel builds from a source tree, a patch series and a config (a campaign's ``build``
kernels): the source trees, patch application, the config and its check, the build itself
through tuxmake, and the artifact cache keyed by a content hash of every input."""
