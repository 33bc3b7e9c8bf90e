"""Project tier: packaging, the docs' examples, the benchmark smoke run and the layout of this test suite."""
