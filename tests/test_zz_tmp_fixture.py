def test_fixture(market_run):
    pass
