"""pulsarfunc.builder: `pulsarfunc build`, `init` and `manifest`, on the developer's host only.

One build, module by module (`build.build_image` orchestrates):

    plan.make_plan          which files land where, the handler, requirements, labels (pure)
    validate                the runtime's own handler checks, before any Docker work
    wheels.WheelStager      requirements -> cached manylinux site dir (pip on the host)
    base.ensure_base        Dockerfile.base + pinned runtime -> pulsarfunc/runtime:<ver>-py<py>
    render                  templates/*.j2 -> Dockerfile, entrypoint.py, check.py (StrictUndefined)
    context.BuildContext    deterministic tar: sorted, fixed mtime/owner/modes
    docker_engine.Engine    the only module importing `docker`: build, inspect, load, push
    progress                stages, wheels (sizes) and engine steps -> timed lines, or rich
                            bars on a terminal; failing log lines
    normalize               canonical image config -> reproducible image id
    commands                flags/env -> exit codes 0 / 2 (UserError) / 1 (BuildError, EngineError)
    scaffold                `pulsarfunc init NAME`
    manifest, autoscale     `pulsarfunc manifest`: Deployment, Function Mesh, KEDA (pure)

The runtime never imports this package; this package imports the runtime only to validate.
"""
