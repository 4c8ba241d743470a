"""Kernel builds from a source tree, a patch series and a config (a campaign's ``build``
kernels): the source trees, patch application, the config and its check, the build itself
through tuxmake — run as the build user in a sandbox, in its lineage's own directory —
and the artifact cache keyed by a content hash of every input."""
