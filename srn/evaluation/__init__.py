"""Benchmark evaluation, each with its own protocol (docs/design.md, "Evaluation protocols").

- :mod:`~srn.evaluation.widerface`: WIDER FACE AP with the official MATLAB semantics;
- :mod:`~srn.evaluation.fddb`: FDDB discrete and continuous ROC;
- :mod:`~srn.evaluation.facebox`: AFW and PASCAL Face AP against the face-eval re-annotations;
- :mod:`~srn.evaluation.labels` and :mod:`~srn.evaluation.sizes`: AP and recall on one's own labels,
  overall and per face size (``srn eval labels``, docs/evaluation.md);
- :mod:`~srn.evaluation.common`: VOC AP, file reading helpers and the JSON form of the results;
- :mod:`~srn.evaluation.plots`: PR curves and the ROC as image files (the one matplotlib user);
- :mod:`~srn.evaluation.calibration`: Platt scaling of scores, fitted on labelled photos (``srn calibrate``);
- :mod:`~srn.evaluation.tta` and :mod:`~srn.evaluation.run`: the release's test-time augmentation
  and the detection runs that feed the evaluators.

The evaluators read their benchmark's files and return result objects (``to_dict``, ``to_json``);
they print nothing and write no reports: ``srn eval`` does that. Submodules are imported on demand,
so ``import srn.evaluation.widerface`` does not load torch or scipy's optimiser.
"""
