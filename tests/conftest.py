pytest_plugins = ["tests.cluster.fixtures", "tests.operator_fixtures"]
