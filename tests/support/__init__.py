"""What the tests share, in one place; imported as ``support`` (pytest puts tests/ on the path).

* :mod:`support.strategies`: Hypothesis strategies (layers, bounds, samplers, specs).
* :mod:`support.fakes`: samplers that record or script their draws.
* :mod:`support.stats`: chi-square and moment checks of a sampler's law.
* :mod:`support.processes`: running Python as a user would, and the DDP rank harness
  (:func:`~support.processes.spawn_ranks` in the test, :func:`~support.processes.run_rank`
  in each rank).
* :mod:`support.ddp_workers`, :mod:`support.layer_drop_workers`: what the ranks run.
* :mod:`support.park`: ``stochdepth train`` parked at a chosen point, for a test to kill.
* :mod:`support.article9`: the article's program, kept verbatim.
* :mod:`support.tiny_llama`: tiny Llama models with a RepeatedBlock, and their unrolled
  twins, for the generation tests.
"""
