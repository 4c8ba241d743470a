"""What a worker checks before it acts on a message: the lab and the node are its own,
and what the message asks fits them, by the same rules as ``swaplab validate``
(model.campaign). A refusal is an InputFault: the run is invalid and nothing runs.

The message has already passed its model (strict, no unknown fields: an executable, an
address or an NFS setting has no place in it); this adds what only the worker can know:
its inventory.
"""

from __future__ import annotations

from model.campaign import kernel_refusals, size_refusal
from model.kernel import BuildSpec
from model.lab import Lab, NodeConfig
from model.runspec import BuildMessage, NodeRunSpec, RunSetupSpec
from workers.labs import LabNotServed, served_lab, served_node
from workers.pipeline.step import InputFault


def admit_setup(spec: RunSetupSpec) -> Lab:
    """The worker's own lab for a run's setup, if the message fits it."""
    try:
        lab = served_lab(spec.lab)
    except LabNotServed as err:
        raise InputFault(str(err)) from None
    _refuse_if([message for _field, message in kernel_refusals(spec.kernel, lab)])
    return lab


def admit_build(message: BuildMessage) -> BuildSpec:
    """A build message's spec, if its local files lie where the lab it names allows them."""
    if message.kernel.build is None:
        raise InputFault("a build message names no build kernel")
    try:
        lab = served_lab(message.lab)
    except LabNotServed as err:
        raise InputFault(str(err)) from None
    _refuse_if([message for _field, message in kernel_refusals(message.kernel, lab)])
    return message.kernel.build


def admit_node(spec: NodeRunSpec) -> tuple[Lab, NodeConfig]:
    """The worker's own lab and node for a node task, if the message fits them."""
    try:
        lab, node = served_node(spec.lab, spec.node)
    except LabNotServed as err:
        raise InputFault(str(err)) from None
    refusals = [message for _field, message in kernel_refusals(spec.kernel, lab)]
    size = size_refusal(spec.ram_mib, spec.cpus, node)
    _refuse_if([*refusals, *([size] if size else [])])
    return lab, node


def _refuse_if(refusals: list[str]) -> None:
    if refusals:
        raise InputFault("refused by this worker: " + "; ".join(refusals))
