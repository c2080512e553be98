from conftest import tiny_spec, write_spec


def test_tiny_sweep_runs(project, cli):
    path = write_spec(project, tiny_spec())
    code, out, err = cli("sweep", path, "--no-progress")
    assert code == 0, err
    assert "tiny · 3 trials" in out
