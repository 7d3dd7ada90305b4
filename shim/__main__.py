"""``python -m cosmos_etcd_shim``: the same as the ``cosmos-etcd`` command."""
from cosmos_etcd_shim.cli import main

raise SystemExit(main())
