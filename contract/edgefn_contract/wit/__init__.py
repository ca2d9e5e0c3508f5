"""edgefn's WIT contract (*.wit files), shipped as package data.

`edgefn build` hands this folder to componentize-py; the host links what it
declares. Its package version is `edgefn_contract.CONTRACT_VERSION`.
"""
