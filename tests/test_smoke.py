from conftest import bearer


def test_create_and_read_back(client, admin_token):
    created = client.post("/api/secrets", json={"key": "MY_API_KEY", "value": "v1"}, headers=bearer(admin_token))
    assert created.status_code == 200
    read = client.get("/api/secrets/MY_API_KEY", headers=bearer(admin_token))
    assert read.get_json() == {"data": {"key": "MY_API_KEY", "value": "v1"}}
