"""edgefn's WIT contract (*.wit files), shipped with the SDK as package data."""
