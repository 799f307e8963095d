"""Check that the environment can run dynscale, with messages that name the fix.

Usage: ``python tools/check_env.py [--quiet] [--no-mm]``.  Exit status 0 when
everything needed is importable and works, 1 otherwise.  The checks are the ones
a broken install fails in confusing ways later:

* ``torchvision.ops.nms`` runs (a torchvision built for another torch fails here);
* ``mmcv`` is the full package with compiled ops (``mmcv-lite`` lacks ``mmcv.ops``)
  and its ops were compiled against the installed torch;
* mmsegmentation / mmdetection accept the installed mmcv version.
"""
import argparse
import sys


def check(no_mm=False):
    """Run the checks; return a list of ``(name, ok, message)`` tuples."""
    results = []
    try:
        import torch
        import torchvision
        from torchvision.ops import nms
        keep = nms(torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]]), torch.tensor([0.9, 0.8]), 0.5)
        assert keep.tolist() == [0]
        results.append(('torch', True, f'torch {torch.__version__}, torchvision {torchvision.__version__}'))
    except Exception as e:  # noqa: BLE001 - every failure is reported, not raised
        results.append(('torch', False, f'torch/torchvision broken ({e!r}); reinstall the pinned pair '
                        'with `bash tools/setup_env.sh` (torch==2.13.0, torchvision==0.28.0)'))
        return results
    if no_mm:
        return results
    from plugins._compat import MMEnvironmentError, check_mm_environment
    try:
        results.append(('mm', True, check_mm_environment()))
    except MMEnvironmentError as e:
        results.append(('mm', False, str(e)))
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--quiet', action='store_true')
    ap.add_argument('--no-mm', action='store_true', help='skip the OpenMMLab checks')
    args = ap.parse_args()
    results = check(args.no_mm)
    ok = all(r[1] for r in results)
    for name, good, msg in results:
        if not args.quiet or not good:
            print(f"[{'ok' if good else 'FAIL'}] {name}: {msg}")
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
