"""inflow_ray: run inflow's index, encode and score on many machines, with Ray.

The worker contract is ``(part i of N) → immutable part store``. Each Ray task runs the ``inflow``
binary of its node on one part:

* ``inflow index|encode … --shard i/N --out PARTS/part-i-of-N`` writes part ``i`` of ``N`` of a store
  (a contiguous range of whole shards), committing shard by shard to its ``manifest.json``; rerun,
  it resumes, and a complete part is left as it is;
* ``inflow score … --part i/N --out PARTS/part-i-of-N.parquet`` scores part ``i``'s shards of a
  whole store.

Then the driver merges the parts with ``inflow store merge`` or ``inflow scores merge``, which
checks them and gives exactly what one process would have written. Since a task is just a command
line that resumes, Ray's retries are the whole recovery story: the driver submits tasks and waits
(``ray.wait``); it has no scheduler of its own. The same binary runs under Slurm arrays or
Kubernetes Indexed Jobs with the same ``--shard i/N``.

Modules: ``cli`` (the command line), ``driver`` (submit, wait, progress, merge), ``worker`` (one
task; standard library only, shipped to the nodes by value), ``cluster`` (connecting to Ray),
``progress`` (rows done, read from the part stores' manifests).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
