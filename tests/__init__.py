"""The test suite: the real daemon and simulator over real sockets, and unit tests of pure parts."""
