pub async fn run() -> anyhow::Result<u8> {
    Ok(0)
}
