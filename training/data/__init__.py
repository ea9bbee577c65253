"""Domain data for training: one module per concern.

* ``domain``: ``DomainData``, ``SPLITS``, ``DataError`` and the deterministic splits;
* ``embedded``: the embedded benchmark's five builders (``_pickle``: restricted unpickling);
* ``imagefolder``, ``decathlon``: the user formats (``_images``: reading their image files);
* ``cache``: the on-disk cache and the benchmark digest;
* ``factory``: ``load_domains``, which parses ``--domains`` items and picks the format;
* ``augment``: ``train_augment``; ``batches``: torch batches for training and evaluation;
* ``summary``: the table of loaded domains.

May import ``multidomain`` and ``training.errors``, never ``service`` or ``reporting``. This
``__init__`` only re-exports the public names, so ``from training.data import X`` keeps working.
"""

from training.data._pickle import RestrictedUnpickler, restricted_pickle_load
from training.data.augment import train_augment
from training.data.batches import DomainBatches, DomainFeeder, images_to_tensor, iterate_eval
from training.data.cache import CACHE_FORMAT_VERSION, benchmark_digest, embedded_cache_dir
from training.data.decathlon import load_decathlon_domain
from training.data.domain import SPLITS, DataError, DomainData
from training.data.embedded import EMBEDDED_DOMAINS, build_embedded_benchmark
from training.data.factory import load_domains
from training.data.imagefolder import IMAGE_EXTENSIONS, load_imagefolder_domain
from training.data.summary import print_summary

__all__ = [
    "CACHE_FORMAT_VERSION",
    "EMBEDDED_DOMAINS",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "DataError",
    "DomainBatches",
    "DomainData",
    "DomainFeeder",
    "RestrictedUnpickler",
    "benchmark_digest",
    "build_embedded_benchmark",
    "embedded_cache_dir",
    "images_to_tensor",
    "iterate_eval",
    "load_decathlon_domain",
    "load_domains",
    "load_imagefolder_domain",
    "print_summary",
    "restricted_pickle_load",
    "train_augment",
]
