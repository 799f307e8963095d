"""Logging of the pretraining tool: the console / ``log.txt`` loggers, ``metrics.csv`` and TensorBoard."""
import csv
import logging
import math
import os
import sys

LOG = logging.getLogger('pretrain')
LOG_FILE = logging.getLogger('pretrain.file')  # log.txt only (progress lines while a tqdm bar is shown)


def setup_logging(output_dir, info):
    """Rank 0: INFO to stdout and ``output_dir/log.txt``; other ranks: WARNING to stderr.
    Every line carries the rank (``[r0]``)."""
    LOG.handlers.clear()
    LOG.propagate = False
    LOG_FILE.handlers.clear()
    LOG_FILE.propagate = False
    fmt = logging.Formatter(f'%(asctime)s [r{info.rank}] %(message)s', datefmt='%H:%M:%S')
    if info.is_main:
        LOG.setLevel(logging.INFO)
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(fmt)
        LOG.addHandler(h)
        fh = logging.FileHandler(os.path.join(output_dir, 'log.txt'))
        fh.setFormatter(fmt)
        LOG.addHandler(fh)
        LOG_FILE.setLevel(logging.INFO)
        LOG_FILE.addHandler(fh)
    else:
        LOG.setLevel(logging.WARNING)
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(fmt)
        LOG.addHandler(h)


def close_logging():
    """Close and drop the handlers installed by :func:`setup_logging` (in-process reuse, tests)."""
    for lg in (LOG, LOG_FILE):
        for h in list(lg.handlers):
            h.close()
            lg.removeHandler(h)


class CSVLog:
    """Append rows (dicts) to a CSV file; the header is the first row's keys plus any later new key
    (the file is rewritten when the header grows)."""

    def __init__(self, path):
        self.path = path
        self.fields = None
        if os.path.exists(path):
            with open(path, newline='') as f:
                r = csv.reader(f)
                self.fields = next(r, None)

    def write(self, row):
        new = [k for k in row if self.fields is None or k not in self.fields]
        if new:
            rows = []
            if self.fields and os.path.exists(self.path):
                with open(self.path, newline='') as f:
                    rows = list(csv.DictReader(f))
            self.fields = (self.fields or []) + new
            with open(self.path, 'w', newline='') as f:
                w = csv.DictWriter(f, fieldnames=self.fields)
                w.writeheader()
                w.writerows(rows)
        with open(self.path, 'a', newline='') as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(row)


class TBLog:
    """``torch.utils.tensorboard.SummaryWriter`` when tensorboard is installed (else a warning, no-op)."""

    def __init__(self, logdir, enabled):
        self.w = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # tensorboard is an install_requires of dynscale, but stay usable without it
            LOG.warning(f'TensorBoard logging disabled ({e}); pip install tensorboard, or pass --no-tensorboard')
            return
        self.w = SummaryWriter(logdir)

    def scalars(self, d, step, prefix):
        if self.w is None:
            return
        for k, v in d.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.w.add_scalar(f'{prefix}/{k}', v, step)

    def close(self):
        if self.w is not None:
            self.w.close()
