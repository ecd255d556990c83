"""The review loop in a real browser (chromium via Playwright) against the console in uvicorn
over a real SQLite file; each page is screenshotted under the test's temporary folder."""

from __future__ import annotations

from console_helpers import ADMIN, N_EXCHANGES, login

from xianliao.storage.models import AdminAction, Exchange

pytest_plugins = ["console_fixtures"]


def statuses(db) -> dict[int, str]:  # noqa: ANN001
    with db.read() as s:
        return dict(s.query(Exchange.id, Exchange.review_status).all())


def test_login_page_through_filter_approve_edit_reject_all(page, db):
    page.goto("/conversations")
    assert page.url.endswith("/login")  # nothing without logging in
    page.shot("login")
    login(page)
    page.shot("conversations")
    assert page.locator("#total").inner_text() == f"{N_EXCHANGES} matching"
    assert page.locator("#exchanges tbody tr").count() == 50
    page.click("a[rel=next]")
    assert page.locator("#exchanges tbody tr").count() == N_EXCHANGES - 50
    page.shot("page-2")

    # filter: user 3's exchanges mentioning 天气 (1-10 but 7, which says <script>)
    page.goto("/conversations")
    page.fill("input[name=user]", "3")
    page.fill("input[name=text]", "天气")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**/conversations?*user=3*")
    assert page.locator("#total").inner_text() == "9 matching"
    page.shot("filtered")

    # approve three: select them and use the bulk button
    for exchange_id in (10, 9, 8):
        page.check(f"tr[data-id='{exchange_id}'] input[name=ids]")
    with page.expect_navigation():
        page.click("button[data-bulk=approved]")
    assert "3 exchange(s) marked approved" in page.locator(".notice").inner_text()
    assert [statuses(db)[i] for i in (10, 9, 8)] == ["approved"] * 3
    assert "user=3" in page.url  # the filter is kept
    page.shot("approved-three")

    # keyboard: j j r rejects the second row (exchange 9)
    page.keyboard.press("j")
    page.keyboard.press("j")
    with page.expect_navigation():
        page.keyboard.press("r")
    assert statuses(db)[9] == "rejected"

    # edit one: the answer the bot should have given (e opens the focused row)
    # the reloaded list keeps the place: row 9 again, then two down (7 has no 天气)
    assert page.locator("tr.focus").get_attribute("data-id") == "9"
    for _ in range(2):
        page.keyboard.press("j")
    assert page.locator("tr.focus").get_attribute("data-id") == "6"
    with page.expect_navigation():
        page.keyboard.press("e")
    assert "/conversations/6?" in page.url
    page.fill("#answer", "晴天，二十度")
    page.shot("edit")
    with page.expect_navigation():
        page.click("#edit-form button[type=submit]")
    with db.read() as s:
        six = s.get(Exchange, 6)
        assert (six.edited_reply, six.review_status, six.reviewed_by) == (
            "晴天，二十度",
            "approved",
            ADMIN,
        )

    # reject all matching a filter, after a confirmation with the count
    page.goto("/conversations?user=3&status=pending")
    pending = page.locator("#total").inner_text()
    page.click("a[data-all=rejected]")
    page.wait_for_selector("#confirm-count")
    assert page.locator("#confirm-count strong").inner_text() == pending.split()[0]
    page.shot("confirm-reject-all")
    with page.expect_navigation():
        page.click("#confirm")
    assert "marked rejected" in page.locator(".notice").inner_text()
    after = statuses(db)
    assert [after[i] for i in range(1, 11)] == [
        "rejected", "rejected", "rejected", "rejected", "rejected",
        "approved", "rejected", "approved", "rejected", "approved",
    ]  # fmt: skip
    assert all(after[i] == "pending" for i in range(11, N_EXCHANGES + 1))  # other users untouched
    with db.read() as s:
        actions = [a.action for a in s.query(AdminAction).filter_by(user_id=ADMIN)]
    assert actions == [
        "console_login",
        "review_approved",
        "review_rejected",
        "review_edit",
        "review_rejected",
    ]


def test_script_in_a_message_shows_as_text(page):
    login(page)
    page.goto("/conversations?user=3")
    cell = page.locator("tr[data-id='7'] .user-text")
    assert cell.inner_text() == "<script>document.title='pwned'</script>你好"
    assert page.title() != "pwned"
    page.goto("/conversations/7")
    assert page.locator("#user-text").inner_text().startswith("<script>")
    assert page.title() != "pwned"
    page.shot("script-as-text")


def test_a_forged_form_is_refused(page, db):
    login(page)
    page.goto("/conversations")
    page.eval_on_selector_all("input[name=csrf]", "els => els.forEach(e => e.value = 'forged')")
    page.click("tr[data-id='60'] button[data-key=a]")
    assert "CSRF" in page.locator("body").inner_text()
    assert statuses(db)[60] == "pending"
