"""The node session as a pipeline of steps, and the run- and lab-scope setup before it.

``step``: Step, Pipeline, scopes and the typed failures (whose fault).
``context``: what a node session's steps share.
``evidence``: the rules that decide whose fault a stopped node is.
``boot_steps``, ``attach_steps``, ``swap_steps``, ``workload_steps``: the steps.
``strategy``: which steps a node runs, from what its driver can do.
``run_setup``: the lab- and run-scope steps done once per run, before nodes are leased.
"""
