"""``cosmos-etcd migrate``: a running etcd moved into this project's store (embedded or Cosmos)
with every revision kept, then cut over (see :mod:`runner`)."""
