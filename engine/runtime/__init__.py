"""The container runtime: plan a container as data, apply it in a fresh process, supervise it.

* :mod:`engine.runtime.spec`     -- :class:`RuntimeSpec`, the OCI-shaped description of one container;
* :mod:`engine.runtime.plan`     -- image config + run options -> spec (Docker's rules);
* :mod:`engine.runtime.users`    -- ``--user`` from the container's passwd/group, parsed as data;
* :mod:`engine.runtime.caps`     -- capability names, Docker's default set, applying a set;
* :mod:`engine.runtime.cgroups`  -- cgroup v1/v2/hybrid managers (and a recording fake);
* :mod:`engine.runtime.executor` -- the container's init: namespaces, mounts, pivot_root, user, caps, exec;
* :mod:`engine.runtime.syscalls` -- ctypes wrappers for the calls the standard library lacks.

This package imports nothing eagerly: the executor runs between fork and exec and must stay light.
"""
