"""Real-kernel test harness: boots Debian's own 6.1 kernel under QEMU and runs the project's commands inside it.

``harness.py`` is the entry point (:func:`harness.session_environment`, then :meth:`harness.VM.run` or
:meth:`harness.Environment.run_many`); ``kernel.py`` fetches and caches the kernel packages, ``initramfs.py`` builds
the guest's init, ``modules.py`` builds the livepatch modules the cases load (C sources in ``modules/``) and
``klpconvert.py`` turns ordinary kbuild modules into ``.klp.rela``/``.klp.sym`` livepatch modules, ``loader.py``
rewrites copies of one plain patch to trip the module loader's checks (vermagic, CRC, export, signature). In the guest,
scripts use the shell helpers of ``guest.sh`` (``step``, ``klp_wait``, ``sysfs_dump`` via ``sysfs_dump.py``,
``install_patch``); ``compare.py`` reads the kernel's verdict (dmesg, sysfs) and klpd's JSON side by side.
A guest's root is the host's, or a fresh install of a Debian suite that ``rootfs.py`` makes with mmdebstrap.
Everything downloaded or built lives in a cache directory (see :func:`kernel.cache_dir`), never in the repository.
"""
