use super::*;

fn params(pairs: &[(&str, &str)], known: &[&str]) -> Result<Params, ApiError> {
    let pairs = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    Params::parse(Ok(Query(pairs)), known)
}

#[test]
fn paging_defaults_and_limits() {
    let known = ["page", "size", "unit"];
    assert_eq!(params(&[], &known).unwrap().paging().unwrap(), Paging { page: 0, size: 20 });
    assert_eq!(
        params(&[("page", "3"), ("size", "1000")], &known).unwrap().paging().unwrap(),
        Paging { page: 3, size: 1000 }
    );
    assert_eq!(params(&[("page", ""), ("size", "")], &known).unwrap().paging().unwrap(), Paging { page: 0, size: 20 });
    for (name, value) in [("size", "0"), ("size", "1001"), ("size", "x"), ("page", "-1"), ("page", "1.5")] {
        let err = params(&[(name, value)], &known).unwrap().paging().unwrap_err();
        assert_eq!(err.full_code(), "mdsp.core.generic.invalidParameter");
        assert!(err.message.starts_with(name), "{}", err.message);
    }
}

#[test]
fn unknown_and_repeated_parameters_are_refused() {
    let known = ["page", "size", "unit"];
    assert!(params(&[("units", "x")], &known).unwrap_err().message.starts_with("units is not a parameter"));
    assert_eq!(params(&[("unit", "a"), ("unit", "b")], &known).unwrap_err().message, "unit must be given at most once");
    assert_eq!(params(&[("unit", "")], &known).unwrap().get("unit"), None);
}

#[test]
fn page_info_counts_partial_pages() {
    let paging = Paging { page: 2, size: 10 };
    assert_eq!(paging.offset(), 20);
    assert_eq!(paging.info(21), PageInfo { number: 2, size: 10, total_elements: 21, total_pages: 3 });
    assert_eq!(paging.info(0).total_pages, 0);
    assert_eq!(Paging { page: u32::MAX, size: MAX_PAGE_SIZE }.offset(), 4_294_967_295_000);
}
